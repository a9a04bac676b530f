"""Our dependencies' notices about each other stay off operators' terminals.

Imported first by the entry points (worker.py, the platform-apply console
script), before anything imports asyncssh. Narrow on purpose: named
categories from named modules only, so our own warnings, and any other
library's, still show.
"""

import warnings

from cryptography.utils import CryptographyDeprecationWarning

# cryptography 51 deprecates DSA, which asyncssh still names at import: ten lines an operator can do nothing about.
warnings.filterwarnings("ignore", category=CryptographyDeprecationWarning, module=r"asyncssh(\.|$)")
