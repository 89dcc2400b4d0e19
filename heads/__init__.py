"""Heads: map backbone output to L2-normalised embeddings; registered by name."""
from zoo.heads.autoencoder import ConvAutoencoderHead
from zoo.heads.base import Head, create_head
from zoo.heads.frozen import FrozenHead
from zoo.heads.triplet import TripletHead

__all__ = ["Head", "create_head", "FrozenHead", "TripletHead", "ConvAutoencoderHead"]
