"""The daemon starts, answers C-ECHO on both AEs (VE-01, VE-02) and stores with DCMTK storescu."""


import datasets
from helpers import dcmtk


def test_echo_both_aes_with_echoscu(appliance):
    for title, port in (("EX_STORE_SCP", appliance.storage_port), ("EX_QUERY_SCP", appliance.qr_port)):
        result = dcmtk("echoscu", "-aec", title, "127.0.0.1", str(port))
        assert result.returncode == 0, result.stderr
    appliance.wait_log(r"QUERY-RETRIEVE-SCP #\d+ ECHOSCU@.*C-ECHO status 0x0000")


def test_storescu_stores_bit_identical(appliance, tmp_path):
    sent = datasets.write(datasets.image(), tmp_path / "ct.dcm")
    result = dcmtk("storescu", "-aec", "EX_STORE_SCP", "127.0.0.1", str(appliance.storage_port), str(sent))
    assert result.returncode == 0, result.stderr
    [stored] = appliance.stored_files()
    assert datasets.dataset_bytes(stored) == datasets.dataset_bytes(sent)
