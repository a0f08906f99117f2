"""Record accounting without Spark: records that were never documents are counted apart from dropped
documents, and both identities (per stage, whole run) are checked exactly."""
import pytest

from pipeline import accounting

INGEST = {"stage": "ingest", "seconds": 2.0, "records_in": 2057, "records_out": 1000,
          "not_documents": {"not_response": 1033}, "dropped": {"http_status": 10, "not_html": 14}}
DEDUP = {"stage": "dedup", "seconds": 1.0, "records_in": 1000, "records_out": 731,
         "duplicates_removed": 269, "dropped": {}}
TOKENIZE = {"stage": "tokenize", "seconds": 1.0, "records_in": 731, "records_out": 730,
            "dropped": {"bad_record": 1}}


def test_reasons_split_into_not_documents_and_drops():
    rows = {"not_response": 5, "http_status": 2, "bad_record": 1}
    assert accounting.split_reasons(rows) == ({"not_response": 5}, {"bad_record": 1, "http_status": 2})
    assert set(accounting.ROW_REASONS) == set(accounting.NOT_DOCUMENT_REASONS) | set(accounting.DROP_REASONS)
    assert not set(accounting.NOT_DOCUMENT_REASONS) & set(accounting.DROP_REASONS)


def test_summary_identity_and_table():
    s = accounting.build_summary([INGEST, DEDUP, TOKENIZE])
    assert s["records_in"] == 2057 and s["documents_in"] == 2057 - 1033
    assert s["not_documents"] == {"not_response": 1033}
    assert s["dropped"] == {"bad_record": 1, "http_status": 10, "not_html": 14}
    # kept: what the last stage holds; a document dropped after dedup is not counted as kept too
    assert (s["kept"], s["duplicates_removed"]) == (730, 269)
    # the identity, from the summary's own fields
    assert sum(s["not_documents"].values()) + s["kept"] + s["duplicates_removed"] + sum(s["dropped"].values()) \
        == s["records_in"]
    table = accounting.format_table(s)
    lines = table.splitlines()
    not_doc = next(line for line in lines if line.strip().startswith("not documents"))
    assert "1033" in not_doc and "nothing lost" in not_doc
    assert not any(line.strip().startswith("dropped not_response") for line in lines)
    assert lines[-1].endswith("OK")


def test_mismatches_fail_loudly():
    with pytest.raises(accounting.AccountingError, match="stage tokenize read 731 records, but dedup wrote 730"):
        accounting.build_summary([INGEST, dict(DEDUP, records_out=730, duplicates_removed=270), TOKENIZE])
    with pytest.raises(accounting.AccountingError, match="not_documents=1033"):
        accounting.check_stage(dict(INGEST, records_out=999))
    with pytest.raises(accounting.AccountingError, match="unknown drop reasons"):
        accounting.check_stage(dict(INGEST, not_documents={"http_status": 1033}))
    with pytest.raises(accounting.AccountingError, match="unknown drop reasons"):
        accounting.check_stage(dict(INGEST, dropped={"not_response": 24}, not_documents={}, records_out=2033))
