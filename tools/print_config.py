"""Print the fully resolved config (defaults <- YAML chain <- CLI), like mmcls' print_config.

    python tools/print_config.py config/segformer.b2.1024x1024.city.yaml [--key=value ...]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from src.utils.config import ConfigError, load_config  # noqa: E402


def main(argv):
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    config_path, overrides = argv[0], argv[1:]
    if config_path.startswith("--"):
        config_path, overrides = "", argv
    try:
        cfg = load_config(config_path, overrides)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    print(cfg.dump(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
