"""The DEVICE_ID a process passes to ``set_device`` for an Ascend card (standard library only).

One card has three numbers:

* physical: its index on the server -- the rank table's ``device_id``, ``npu-smi``'s id and
  the N of its device file ``/dev/davinci<N>``;
* logical: its index among the cards this machine sees, in physical order. On a server
  that sees all its cards it equals the physical id; a container that mounts only cards
  4-7 (their device files keep their names) numbers them 0-3;
* the process's own: with ``ASCEND_RT_VISIBLE_DEVICES`` (logical ids, ascending) a process
  sees only those cards, numbered 0.. in that order; without it, the logical id.

``DEVICE_ID`` / ``ms.set_device`` take the process's own number. The cards this machine
sees are the ``davinci<N>`` files of ``/dev`` (``--dev_dir``); where there are none (a
dry run on a machine without Ascend) the server is taken to see all its cards.

Used by ``scripts/run_distribute_train_msrun.sh`` (msrun exports DEVICE_ID = local rank:
``worker_cards`` checks every local worker has a card) and, through the command line, by
``scripts/run_distribute_train.sh``::

    python src/utils/ascend_cards.py 4 5 6 7 [--dev_dir DIR]

prints one DEVICE_ID per physical id of the rank table, or a clear error (exit status 2).
"""
import argparse
import os
import re
import sys

CARD_FILE = re.compile(r"davinci(\d+)")
VISIBLE_ENV = "ASCEND_RT_VISIBLE_DEVICES"


class CardError(ValueError):
    """A card numbering problem; the message names the value and what was expected."""


def local_cards(dev_dir="/dev"):
    """Physical ids of the cards this machine (or container) sees, ascending: its
    ``davinci<N>`` device files (``davinci_manager`` and the like are not cards)."""
    try:
        names = os.listdir(dev_dir)
    except OSError:
        return []
    return sorted(int(m.group(1)) for m in map(CARD_FILE.fullmatch, names) if m)


def _describe(cards, dev_dir):
    if not cards:
        return f"no davinci<N> files in {dev_dir}: taken as a server that sees all its cards"
    return (f"{len(cards)} card(s) {cards} ({os.path.join(dev_dir, 'davinci<N>')}), "
            f"logical ids 0-{len(cards) - 1}")


def visible_devices(text, cards, dev_dir="/dev"):
    """ASCEND_RT_VISIBLE_DEVICES as a list of logical ids (None when unset or empty)."""
    if text is None or text.strip() == "":
        return None
    items = text.split(",")
    if not all(s.isdigit() for s in items):
        raise CardError(f"{VISIBLE_ENV}={text!r} must list logical device ids separated by "
                        "commas, like 0,1,2,3")
    ids = [int(s) for s in items]
    if ids != sorted(set(ids)):
        raise CardError(f"{VISIBLE_ENV}={text!r}: the Ascend runtime takes each id once, in "
                        "ascending order")
    if cards and ids[-1] >= len(cards):
        raise CardError(f"{VISIBLE_ENV}={text!r} lists logical ids, but this machine has "
                        f"{_describe(cards, dev_dir)}; in a container, the cards it mounts are "
                        "numbered from 0")
    return ids


def device_ids(physical_ids, cards, visible, dev_dir="/dev"):
    """The DEVICE_ID of each physical card id."""
    out = []
    for physical in physical_ids:
        if cards:
            if physical not in cards:
                raise CardError(f"device_id {physical} is not a card of this machine, which has "
                                f"{_describe(cards, dev_dir)}")
            logical = cards.index(physical)
        else:
            logical = physical
        if visible is None:
            out.append(logical)
        elif logical in visible:
            out.append(visible.index(logical))
        else:
            raise CardError(f"device_id {physical} (logical id {logical} on this machine) is not "
                            f"in {VISIBLE_ENV}={','.join(map(str, visible))}")
    return out


def worker_cards(count, cards, visible, dev_dir="/dev"):
    """Physical id of the card of each of ``count`` local processes, DEVICE_ID 0..count-1
    (None where this machine's cards are not known)."""
    logical = visible if visible is not None else (list(range(len(cards))) if cards else None)
    if logical is None:
        return [None] * count
    if count > len(logical):
        seen = (f"{VISIBLE_ENV}={','.join(map(str, visible))} ({len(visible)} card(s))"
                if visible is not None else _describe(cards, dev_dir))
        raise CardError(f"{count} processes on this machine need {count} Ascend cards, but they "
                        f"see {len(logical)}: {seen}")
    return [cards[i] if cards else i for i in logical[:count]]


def main(argv=None):
    parser = argparse.ArgumentParser(description="DEVICE_ID of each physical Ascend card id.")
    parser.add_argument("physical", nargs="+", type=int, help="physical card ids")
    parser.add_argument("--dev_dir", default="/dev", help="where the davinci<N> files are")
    args = parser.parse_args(argv)
    try:
        cards = local_cards(args.dev_dir)
        visible = visible_devices(os.environ.get(VISIBLE_ENV), cards, args.dev_dir)
        ids = device_ids(args.physical, cards, visible, args.dev_dir)
    except CardError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for device_id in ids:
        print(device_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
