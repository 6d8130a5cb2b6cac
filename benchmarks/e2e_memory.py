"""Why does the end-to-end step peak higher with our adapters? (open question from the H100 run)

    python benchmarks/e2e_memory.py [--backend auto] [--out snapshot.pickle]

Runs one training step of the e2e model (st_adapter_fast.bench.e2e) on a GPU with the CUDA caching allocator
recording its history, then prints the live allocations at the peak, grouped by the innermost frame of
this package (or the first frame outside torch) that allocated them. The snapshot can also be opened
at pytorch.org/memory_viz.
"""
import argparse
import collections
import os
import pickle
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from st_adapter_fast.bench.e2e import set_backend  # noqa: E402
from st_adapter_fast.integrations.timm import build_video_classifier  # noqa: E402


def owner(frames):
    for f in frames:
        if "st_adapter_fast" in f["filename"]:
            return f"{os.path.basename(f['filename'])}:{f['line']} {f['name']}"
    for f in frames:
        if "/torch/" not in f["filename"] and "<" not in f["filename"]:
            return f"{os.path.basename(f['filename'])}:{f['line']} {f['name']}"
    return "?"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="auto", help="adapter backend: auto (ours) or reference")
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--out", help="write the allocator snapshot here")
    args = parser.parse_args()
    model = build_video_classifier("vit_base_patch16_224", 400, num_frames=8, dropout=0.0).cuda()
    set_backend(model, args.backend)
    video = torch.randn(args.clips, 3, 8, 224, 224, device="cuda")
    labels = torch.randint(0, 400, (args.clips,), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(video), labels)
        loss.backward()
        model.zero_grad(set_to_none=True)

    step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.memory._record_memory_history(max_entries=200000)
    step()
    torch.cuda.synchronize()
    snapshot = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    print(f"backend={args.backend}: peak allocated {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    if args.out:
        with open(args.out, "wb") as f:
            pickle.dump(snapshot, f)

    # Replay the trace to find the peak and what was live then.
    live, total, peak, at_peak = {}, 0, 0, {}
    for event in snapshot["device_traces"][0]:
        if event["action"] == "alloc":
            live[event["addr"]] = (event["size"], owner(event.get("frames", [])))
            total += event["size"]
            if total > peak:
                peak, at_peak = total, dict(live)
        elif event["action"] == "free_completed" and event["addr"] in live:
            total -= live.pop(event["addr"])[0]
    by_owner = collections.Counter()
    for size, who in at_peak.values():
        by_owner[who] += size
    print(f"traced peak (allocations made during the step): {peak / 2**30:.2f} GiB; largest owners:")
    for who, size in by_owner.most_common(15):
        print(f"  {size / 2**20:9.1f} MiB  {who}")


if __name__ == "__main__":
    main()
