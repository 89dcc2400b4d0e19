"""Folder -> image records -> decoded, preprocessed tensors: listing, decoding (Pillow or the
device), the model's transforms, augmentations, the training datamodule and video frames."""
