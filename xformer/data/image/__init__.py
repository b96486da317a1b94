"""The image side of the data: decoded image sets, their sources, tensor augmentation and image-caption pairs."""
