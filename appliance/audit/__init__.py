"""The IHE ATNA audit trail: DICOM PS3.15 A.5 audit messages in RFC 5424 syslog (AU-01..AU-03).

    messages.py   the XML of each event of A.5.3 (pure functions)
    syslog.py     the RFC 5424 message around it; octet counting for streams
    transport.py  UDP (RFC 5426), TCP (RFC 6587), TLS (RFC 5425) to `[audit] collector`
    spool.py      the bounded on-disk spool (`<data_dir>/audit-spool`) (AU-02)
    sender.py     the one thread that sends, spools, retries and keeps the order
    trail.py      the service's trail: start/configure/stop, `record`, the ALERT forwarder (AU-03)
    events.py     the events in the appliance's terms, called from the DICOM adapters and the daemon

Everything a service thread calls here returns at once and never raises; with `[audit]
collector = ""` it does nothing.
"""

from appliance.audit.events import (application_started, application_stopped, changed_keys, configuration_changed,
                                    count_stored, export_begins, export_ended, instances_received,
                                    node_authentication_failure, patient_record_changed, query, studies_deleted)
from appliance.audit.messages import Patient, Study
from appliance.audit.trail import active, configure, start, status, stop

__all__ = ["Patient", "Study", "active", "application_started", "application_stopped", "changed_keys",
           "configuration_changed", "configure", "count_stored", "export_begins", "export_ended",
           "instances_received", "node_authentication_failure", "patient_record_changed", "query", "start", "status",
           "stop",
           "studies_deleted"]
