"""The network: image encoder, prompt encoder, mask decoder and their composition."""
