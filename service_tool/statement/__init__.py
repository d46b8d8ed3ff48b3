"""The DICOM Conformance Statement of the box as configured, as document blocks (`render.py`).

It follows the outline of the product's conformance statement, one module a part, in the
order `build` puts them:

overview                  the cover, the overview and the implementation model
storage_scu               the STORAGE-SCU AE specification
query_retrieve_scp        the QUERY-RETRIEVE-SCP AE specification
storage_scp               the STORAGE-SCP AE specification
network                   network interfaces and configuration
media_and_character_sets  media interchange and extended character sets
security                  security profiles and association level security
annexes                   element use and modification
association               the association parts the AE specifications share
common                    AE names, values as the statement words them, shared tables

Every value that can be configured is taken from the loaded `Config`. The presentation contexts
come from the functions the service itself negotiates and proposes with (`dicom.contexts`,
`StorageSCU.proposals`), and the C-FIND keys from the query code's key table, so the statement
cannot list a context or key that the service would handle differently.
"""

from __future__ import annotations

from appliance.config.model import Config
from service_tool.render import Block, Contents, Heading
from service_tool.statement import (annexes, media_and_character_sets, network, overview, query_retrieve_scp,
                                    security, storage_scp, storage_scu)


def build(config: Config, source: str) -> list[Block]:
    """The whole statement; `source` names the configuration file it was generated from."""
    return [*overview.cover(source), Contents(), *overview.conformance_overview(config), Heading(2, "Networking"),
            *overview.implementation_model(config), *storage_scu.specification(config),
            *query_retrieve_scp.specification(config), *storage_scp.specification(config),
            *network.interfaces(config), *network.configuration(config), *media_and_character_sets.blocks(),
            *security.blocks(config), *annexes.blocks(config)]
