"""The listing a captures pull reads: `agent.py captures list ROOT KNOWN_JSON`.

Lists ROOT/<day>/*.jsonl with each file's size and the sha256 of its first `size` bytes; a
file whose size the workstation already holds (KNOWN_JSON: {"<day>/<name>": size}) is listed
without a hash, since nothing of it will be fetched. One round trip for the whole listing.

    {"root": "/abs/captures", "files": [{"key": "...", "size": 123, "sha256": "..." | null}]}
"""

import hashlib
import json
import os


def _prefix_sha256(fh, size):
    """sha256 of the first `size` bytes of an open file, and how many bytes were read."""
    digest = hashlib.sha256()
    left = size
    while left > 0:
        block = fh.read(min(left, 1 << 20))
        if not block:
            break
        digest.update(block)
        left -= len(block)
    return digest.hexdigest(), size - left


def listing(root, known):
    root = os.path.abspath(os.path.expanduser(root))
    files = []
    if os.path.isdir(root):
        for rel in sorted(os.listdir(root)):
            folder = os.path.join(root, rel)
            if not os.path.isdir(folder):
                continue
            for name in sorted(os.listdir(folder)):
                if not name.endswith(".jsonl"):
                    continue
                key = rel + "/" + name
                try:
                    with open(os.path.join(folder, name), "rb") as fh:
                        size = os.fstat(fh.fileno()).st_size
                        digest = None
                        if known.get(key) != size:
                            digest, size = _prefix_sha256(fh, size)
                except OSError:
                    continue
                files.append({"key": key, "size": size, "sha256": digest})
    return {"root": root, "files": files}


def main(argv):
    if len(argv) != 3 or argv[0] != "list":
        print(json.dumps({"ok": False, "error": "usage: captures list ROOT KNOWN_JSON"}))
        return 2
    try:
        known = json.loads(argv[2])
    except ValueError:
        known = None
    if not isinstance(known, dict):
        print(json.dumps({"ok": False, "error": "KNOWN_JSON must be a JSON object"}))
        return 2
    print(json.dumps(listing(argv[1], known)))
    return 0
