"""Trainable bridges between an audio encoder and an LLM (see ``base.Bridge``)."""

from bridgebench.bridges.base import Bridge
from bridgebench.bridges.linear_pool import LinearPoolBridge
from bridgebench.bridges.qformer import BridgeNetBridge, QFormer, QFormerBridge

__all__ = ["Bridge", "QFormer", "QFormerBridge", "BridgeNetBridge", "LinearPoolBridge"]
