"""Using a trained model: inference on photos, the quality gate, Grad-CAM, export, the web app, the model card."""
