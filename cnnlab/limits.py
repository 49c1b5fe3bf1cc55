"""Upper bounds on the sizes a user can ask for, checked where the input enters (CLI options, configs).

Beyond these a size is a typing slip rather than a plan, and the numbers built from it would
overflow torch's 64-bit element counts long before any memory ran out (3 x 99999999999^2 elements
does). Each bound is far above any real use, so it never stands in the way of real work.
"""

MAX_IMAGE_SIDE = 16_384  # pixels: 16k x 16k is a gigapixel slide tile; no CNN input is larger
MAX_CHANNELS = 1_024  # input channels: RGB is 3, hyperspectral cubes reach a few hundred
MAX_BATCH = 65_536  # images per batch or forward pass: large-batch ImageNet training used 32k-64k
MAX_CLASSES = 1_000_000  # classifier outputs: the largest label sets (e.g. face IDs) are about 1e6
MAX_STEPS = 10_000_000  # steps, trials, epochs and the like: more than a year of steps at 3 per second
MAX_MINUTES = 10_000_000  # minutes of a training budget (train.minutes): 19 years; 1e308 overflowed its epoch count
MAX_SEED = 2**32 - 1  # seeds: numpy's and Optuna's samplers take 32-bit seeds
# Learning rates and weight decay: real ones lie below 10. torch hands them, and their products, to float32
# kernels, so one past float32's 3.4e38 (1e300, a typing slip) stopped the first step with an overflow deep
# inside the optimiser. A rate up to 1e30 still fits after optim.lr_batch's scaling (at most 65,536x) and times
# a decay up to 1e6 (AdamW and Muon decay by lr x weight_decay); the tests drive runs to divergence with 1e30.
MAX_LR = 1e30
MAX_WEIGHT_DECAY = 1e6
