"""The model: timm backbones and heads with checked weights, the LightningModule, ensembles, and loading a checkpoint
with its evaluation transforms."""
