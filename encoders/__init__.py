"""Frozen audio encoders behind one protocol (see ``base.AudioEncoder``)."""

from bridgebench.encoders.base import AudioEncoder
from bridgebench.encoders.clap import ClapEncoder
from bridgebench.encoders.cnn import ConvEncoder
from bridgebench.encoders.wav2vec_style import Data2VecEncoder, MertEncoder

__all__ = ["AudioEncoder", "ClapEncoder", "ConvEncoder", "MertEncoder", "Data2VecEncoder"]
