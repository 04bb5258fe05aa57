package main

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// File systems on which fallocate leaves unwritten extents that a write
// must convert, so that zeroing the WAL's spare pays.
const (
	ext4Magic = 0xEF53 // ext2, ext3 and ext4
	xfsMagic  = 0x58465342
)

// spareZeroingPays reports whether the file system holding dir is one where
// writing zeros over the WAL's spare segment saves the WAL's fdatasyncs a
// journal commit, and names it. Elsewhere it would only double the WAL's
// writes: on a copy-on-write file system (btrfs, zfs) a zeroed block is
// written anew by the WAL anyway, and may lose its preallocation.
func spareZeroingPays(dir string) (bool, string) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return false, "unknown (" + err.Error() + ")"
	}
	return zeroingPaysOn(int64(st.Type)), fsName(int64(st.Type))
}

func zeroingPaysOn(fsType int64) bool { return fsType == ext4Magic || fsType == xfsMagic }

func fsName(fsType int64) string {
	switch fsType {
	case ext4Magic:
		return "ext4"
	case xfsMagic:
		return "xfs"
	case 0x9123683E:
		return "btrfs"
	case 0x01021994:
		return "tmpfs"
	case 0x65735546:
		return "fuse"
	}
	return fmt.Sprintf("type %#x", fsType)
}
