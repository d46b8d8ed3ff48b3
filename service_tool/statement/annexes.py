"""The Annexes: how STORAGE-SCP coerces element values and how STORAGE-SCU modifies exported ones."""

from __future__ import annotations

from appliance.config.model import Config
from service_tool.render import Block, Heading, Paragraph, Table
from service_tool.statement.common import SCP, SCU, listed


def blocks(config: Config) -> list[Block]:
    scp = config.storage_scp
    defaults = scp.default_values
    rows = [[name, value or "none"] for name, value in (
        ("Patient's Name", defaults.patient_name), ("Patient ID", defaults.patient_id),
        ("Patient's Birth Date", defaults.patient_birth_date), ("Study Date", defaults.study_date),
        ("Accession Number", defaults.accession_number), ("Modality", defaults.modality))]
    return [
        Heading(2, "Annexes"),
        Heading(3, "IOD Contents"),
        Heading(4, f"{SCP} AE Element Use"),
        Paragraph("Coercions change only the database, never the stored file; they show in C-FIND responses "
                  "and are applied to exported copies. Patient's Name is kept as last and first name. A Patient "
                  "ID already used for a patient of another name is given a new unique value. Patient's Sex is "
                  "kept as M, F, O or U. A missing or empty element gets the configured default value below "
                  "(storage_scp.default_values)."),
        Table("Default Values Applied in the Database", ["Attribute", "Default Value"], rows),
        Paragraph("Exam types recorded from Study Description, Series Description, Body Part Examined or the "
                  f"third Image Type value (storage_scp.exam_types): {listed(scp.exam_types)}."),
        Heading(4, f"{SCU} AE Element Modification"),
        Paragraph("An exported instance carries the database's values where they differ from its file: "
                  "edited or coerced demographics, default values, a new SOP Instance UID, Patient's Sex U sent "
                  "empty. Where the file's character set cannot hold a new value, ISO_IR 192 is used. "
                  "SOP Class UID changes only for the US conversion described above."),
    ]
