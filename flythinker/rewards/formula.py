"""PERM reward formula: the definitions live in :mod:`flythinker.modeling.reward_formula`.

Re-exported here, beside the reward callables and judges that use it (the reward heads of the
modeling layer need the same tensor functions, so the one definition sits below them).
"""

from flythinker.modeling.reward_formula import *  # noqa: F403
from flythinker.modeling.reward_formula import __all__  # noqa: F401
