"""Training the network: losses, click simulation, augmentation, datasets of cached cases, the trainer."""
