#!/usr/bin/python3
"""A libtorrent-rasterbar node for `shoal bench swarm` (Debian's python3-libtorrent).

  bt_node.py make FILE TRACKER_URL OUT.torrent   make a v1-only torrent (256 KiB pieces) and
                                                 print its info-hash (for opentracker's -w list)
  bt_node.py run TORRENT SAVE_DIR LISTEN_IP      print 'ready', wait for a line on stdin, then
                                                 seed (SAVE_DIR holds the file) or download;
                                                 print 'complete SECS' once every piece is
                                                 verified, then keep seeding until killed
Only the tracker in the torrent is used: no DHT, local discovery, UPnP, NAT-PMP or uTP.
Written to a temporary folder and run by the bench; not a part of shoal.
"""
import os
import sys
import time

import libtorrent as lt


def make(path, tracker, out):
    fs = lt.file_storage()
    lt.add_files(fs, path)
    # libtorrent 2.x makes hybrid v1+v2 torrents unless told otherwise; opentracker is v1.
    t = lt.create_torrent(fs, 256 * 1024, flags=lt.create_torrent.v1_only)
    t.add_tracker(tracker)
    lt.set_piece_hashes(t, os.path.dirname(os.path.abspath(path)))
    with open(out, "wb") as f:
        f.write(lt.bencode(t.generate()))
    print(str(lt.torrent_info(out).info_hash()), flush=True)


def run(torrent, save, ip):
    ses = lt.session({
        "listen_interfaces": f"{ip}:6881",
        "outgoing_interfaces": ip,
        "enable_dht": False, "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False,
        "enable_outgoing_utp": False, "enable_incoming_utp": False,
        "announce_to_all_trackers": True, "announce_to_all_tiers": True,
        "allow_multiple_connections_per_ip": True,
        "alert_mask": 0,
    })
    ti = lt.torrent_info(torrent)
    # Up and listening; the torrent is added (and announced) once a line arrives on stdin
    # (at once for a seeder whose stdin is /dev/null), so a crowd starts without Python's
    # start-up in its time.
    print("ready", flush=True)
    sys.stdin.readline()
    h = ses.add_torrent({"ti": ti, "save_path": save})
    t0 = time.time()
    said = False
    while True:
        s = h.status()
        if not said and s.is_seeding:
            print(f"complete {time.time() - t0:.3f}", flush=True)
            said = True
        time.sleep(0.02)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "make":
        make(*sys.argv[2:5])
    elif len(sys.argv) == 5 and sys.argv[1] == "run":
        run(*sys.argv[2:5])
    else:
        sys.exit(__doc__)
