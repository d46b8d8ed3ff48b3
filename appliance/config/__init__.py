"""Configuration: model (defaults from the conformance statement), loader, atomic writer."""

from appliance.config.load import data_dir, load_dict, load_file, load_or_defaults, store_dir, tls_path
from appliance.config.model import Config

__all__ = ["Config", "data_dir", "load_dict", "load_file", "load_or_defaults", "store_dir", "tls_path"]
