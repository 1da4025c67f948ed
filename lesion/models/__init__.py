"""The model: timm backbones and heads with checked weights, the LightningModule, its optimizer, ensembles."""
