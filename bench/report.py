#!/usr/bin/python3
"""The markdown tables of bench/run.sh, from its CSV.

  report.py RESULT.csv "machine description"

Ratios compare a server with the raw ceiling (nbdkit file on a raw file
written full once), with a raw file written into new space (nbdkit file on
a new sparse raw file, rows into new space only) and with the faster of
the two qemu-nbd modes on the same row.
"""
import csv
import sys

NAMES = {
    "qcow2j": "qcow2j",
    "qemu-wb": "qemu-nbd writeback",
    "qemu-uring": "qemu-nbd none+io_uring",
    "raw": "nbdkit file (raw)",
    "raw-new": "nbdkit file (raw, new space)",
}


def ratio(a, b):
    return f"{a / b:.2f}" if a and b else "–"


def per_client(host, client, fmt="{:.2f}"):
    """host per client unit, or the host count alone when the client sent none"""
    if client:
        return fmt.format(host / client)
    return f"– ({host:.0f})" if host else "–"


def main():
    rows = list(csv.DictReader(open(sys.argv[1])))
    for r in rows:
        for k in ("value", "client_bytes", "client_flushes", "host_flushes",
                  "server_write_bytes", "open_ms", "vmhwm_kib"):
            r[k] = float(r[k] or 0)
    by = {(r["row"], r["server"]): r for r in rows}

    def ref(row, servers):
        return max((by[(row, s)]["value"] for s in servers if (row, s) in by),
                   default=0)

    print(sys.argv[2])
    print()
    print("| row | server | result | vs raw | vs raw new space | vs qemu-nbd "
          "| host flushes / client flush | bytes written / client byte | qemu-img check |")
    print("|---|---|--:|--:|--:|--:|--:|--:|---|")
    for r in rows:
        if r["row"].startswith("scale"):
            continue
        v = r["value"]
        result = f"{v:.0f} IOPS" if r["metric"] == "IOPS" else f"{v:.0f} MB/s"
        row = r["row"].replace("@slow", f" (flush +{int(r['flush_delay_us']) // 1000} ms)")
        print(f"| {row} | {NAMES[r['server']]} | {result} "
              f"| {ratio(v, ref(r['row'], ['raw']))} "
              f"| {ratio(v, ref(r['row'], ['raw-new']))} "
              f"| {ratio(v, ref(r['row'], ['qemu-wb', 'qemu-uring']))} "
              f"| {per_client(r['host_flushes'], r['client_flushes'])} "
              f"| {per_client(r['server_write_bytes'], r['client_bytes'])} "
              f"| {r['check']} |")

    scale = [r for r in rows if r["row"].startswith("scale")]
    if scale:
        print()
        print("Scale: a sparse 1 TiB image, 4k random reads across all of it at QD16.")
        print()
        print("| server | open (ms) | random reads | vs raw | vs qemu-nbd | peak memory (VmHWM) | qemu-img check |")
        print("|---|--:|--:|--:|--:|--:|---|")
        for r in scale:
            v = r["value"]
            print(f"| {NAMES[r['server']]} | {r['open_ms']:.0f} | {v:.0f} IOPS "
                  f"| {ratio(v, ref(r['row'], ['raw']))} "
                  f"| {ratio(v, ref(r['row'], ['qemu-wb', 'qemu-uring']))} "
                  f"| {r['vmhwm_kib'] / 1024:.1f} MiB | {r['check']} |")


main()
