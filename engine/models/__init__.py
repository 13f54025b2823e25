"""Model families: checkpoint layouts, key conversion, precision, attention, compile and offload."""
