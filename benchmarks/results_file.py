"""What every benchmark shares: where its results go, and the CPU it ran on."""
import datetime
import json
import os
import platform


def write_results(out_dir, name, result):
    """``result`` as ``OUT/NAME-latest.json`` and a dated copy (``NAME-YYYYmmdd-HHMMSS.json``,
    ignored by git); returns the path of the latest."""
    os.makedirs(out_dir, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    for fname in (f"{name}-{stamp}.json", f"{name}-latest.json"):
        with open(os.path.join(out_dir, fname), "w") as f:
            json.dump(result, f, indent=1, default=str)
            f.write("\n")
    latest = os.path.join(out_dir, f"{name}-latest.json")
    print(f"written: {latest}")
    return latest


def cpu_model():
    """The CPU's model name (/proc/cpuinfo), else what ``platform`` says."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
