"""Image data: sources named by strings, offline sets and host-side batching.

`sources` holds the source-string grammar (``npz:``, ``folder:``, ``tfds:``, ``offline:``);
`npz`, `folder`, `tfds` and `offline` read one scheme each; `image_set` holds `ImageSet`;
`batching` holds `map_padded` (the one pad-the-last-batch loop) and index batches.
The names callers use are re-exported here: `data.load_images(...)`, `data.ImageSet`, ...
"""

from dlsr_jax.data.batching import (iterate_eval_batches, map_padded, pad_batch,
                                    train_batch_indices)
from dlsr_jax.data.folder import IMAGE_EXTENSIONS, list_folder
from dlsr_jax.data.image_set import ImageSet, resize_image, to_rgb_uint8
from dlsr_jax.data.sources import SCHEMES, count_images, load_images

__all__ = [
    "IMAGE_EXTENSIONS", "ImageSet", "SCHEMES", "count_images", "iterate_eval_batches",
    "list_folder", "load_images", "map_padded", "pad_batch", "resize_image",
    "to_rgb_uint8", "train_batch_indices",
]
