# `python -m ganscale` and `accelerate launch ganscale ...` (which runs `python ganscale`, so
# this folder is sys.path[0]): absolute imports only, and no module here may share a name
# with a stdlib module or a dependency (tests/test_package.py checks).
from ganscale.cli import main

if __name__ == "__main__":
    main()
