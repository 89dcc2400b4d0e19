"""Folder -> image records -> decoded, preprocessed tensors: listing, decoding (Pillow or the
device), the model's transforms, augmentations and the edit families of copy detection
(copyedits), the training datamodule and video frames."""
