"""Put on PYTHONPATH of the processes `activation dev` starts; see `sitecustomize`."""
