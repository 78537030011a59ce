"""Image data sets: on-disk formats, the uint8 tensors on the device, batched augmentation."""
