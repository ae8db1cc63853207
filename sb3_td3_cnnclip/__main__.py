"""``python -m sb3_td3_cnnclip``: the same command line as ``sb3-td3-cnnclip``."""

import sys

from sb3_td3_cnnclip.cli import main

if __name__ == "__main__":
    sys.exit(main())
