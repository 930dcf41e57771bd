"""Run as: python components/count/count.py --raw FILE --train-out DIR --report-out DIR"""

import argparse
import hashlib
import json
import pathlib

parser = argparse.ArgumentParser()
parser.add_argument("--raw", required=True, help="chat JSONL")
parser.add_argument("--train-out", required=True, help="folder receiving data.jsonl")
parser.add_argument("--report-out", required=True, help="folder receiving data_card.json")
args = parser.parse_args()
data = pathlib.Path(args.raw).read_bytes()
records = sum(1 for line in data.splitlines() if line.strip())
(pathlib.Path(args.train_out) / "data.jsonl").write_bytes(data)
card = {
    "input": {
        "file": pathlib.Path(args.raw).name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "input_records": records,
    }
}
(pathlib.Path(args.report_out) / "data_card.json").write_text(json.dumps(card))
print(f"{records} records")
