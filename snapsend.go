package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"go.etcd.io/etcd/server/v3/etcdserver/api/snap"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
)

// A snapshot travels between members as its file, never as one block of
// memory. With 1M keys the file is some 300 MB: held whole, it took a
// leader sending it to 1.2 GiB and the member receiving it to 0.9–1.05 GiB
// (4.7× and 3.5–4.2× the raw keys and values; docs/performance.md).
//
// The leader: raft's storage hands raft only the snapshot's metadata
// (logStorage.Snapshot), so raft's MsgSnap carries no data; sendMessages
// takes it out of the batch and gives it to rafthttp's snapshot stream
// with the file, opened, as the body that follows the message. rafthttp
// closes the file and reports the outcome to raft (ReportSnapshot).
//
// The member behind: rafthttp saves that body, synced, as
// <snapdir>/<index>.snap.db (etcd's Snapshotter.SaveDBFrom), then hands
// the message to Process, which checks the file (framing, checksum, and
// the metadata the message names) before raft sees the message: a bad file
// is removed and refused, the leader is told the send failed and tries
// again later, and raft never takes a snapshot this member cannot install.
// Once raft hands the snapshot out in a Ready, persistReceivedSnapshot
// renames the file into place as the snapshot file, records it in the WAL,
// and the state machine restores from the file as a stream.
//
// A received file raft never installs (a resend after the install, one
// older than what this member has since committed) is removed when a
// newer snapshot is persisted, and every leftover at start.

// sendMessages sends raft's messages: a snapshot with its file, the rest
// in one batch. Called from the ready loop.
func (rc *raftNode) sendMessages(ms []*raftpb.Message) {
	ms = rc.prepareMessages(ms)
	rest := ms[:0]
	for _, m := range ms {
		if m.GetType() == raftpb.MsgSnap {
			rc.sendSnapshot(m)
		} else {
			rest = append(rest, m)
		}
	}
	rc.transport.Send(rest)
}

// sendSnapshot gives m, a MsgSnap without data, to the transport with its
// snapshot's file as the stream that follows it.
func (rc *raftNode) sendSnapshot(m *raftpb.Message) {
	md := m.GetSnapshot().GetMetadata()
	if !inConfState(md.GetConfState(), m.GetTo()) {
		// A member added after this snapshot: its raft ignores a snapshot
		// whose membership lacks it, and the leader would send it again
		// and again until the snapshot that includes it (forceSnap) is
		// written, each time the whole file (300 MB with 1M keys, three
		// times over while that snapshot took 2.8 s instead of 1;
		// docs/performance.md). Refused here, raft asks again after a heartbeat,
		// and gets that snapshot once it is there.
		if rc.refusedSnap[m.GetTo()] != md.GetIndex() {
			rc.lg.Info("not sending a snapshot to a member it does not include; waiting for the newer one", zap.Uint64("to", m.GetTo()), zap.Uint64("index", md.GetIndex()))
			if rc.refusedSnap == nil {
				rc.refusedSnap = map[uint64]uint64{}
			}
			rc.refusedSnap[m.GetTo()] = md.GetIndex()
		}
		rc.node.ReportSnapshot(m.GetTo(), raft.SnapshotFailure)
		return
	}
	path := rc.snapName(md.GetTerm(), md.GetIndex())
	f, size, err := openForSending(path)
	if err != nil {
		// Purged for a newer one since raft asked: raft asks again, and
		// gets the newer one.
		rc.lg.Warn("cannot open the snapshot file to send it to a follower", zap.Uint64("to", m.GetTo()), zap.String("path", path), zap.Error(err))
		rc.node.ReportSnapshot(m.GetTo(), raft.SnapshotFailure)
		return
	}
	rc.lg.Info("sending snapshot", zap.Uint64("to", m.GetTo()), zap.Uint64("index", md.GetIndex()), zap.Int64("bytes", size))
	rc.transport.SendSnapshot(snap.NewMessage(m, f, size))
}

// inConfState says whether id is in cs as raft's restore looks for it:
// a voter, a learner, or an outgoing voter (a joint configuration's
// incoming learners are outgoing voters).
func inConfState(cs *raftpb.ConfState, id uint64) bool {
	return slices.Contains(cs.GetVoters(), id) || slices.Contains(cs.GetLearners(), id) || slices.Contains(cs.GetVotersOutgoing(), id)
}

func openForSending(path string) (*os.File, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	return f, fi.Size(), nil
}

// checkReceivedSnapshot checks the file rafthttp saved for m, a MsgSnap
// from the leader, before raft is given m. A snapshot sent with its data
// inside the message (by an older member) has no file and passes.
func (rc *raftNode) checkReceivedSnapshot(m *raftpb.Message) error {
	s := m.GetSnapshot()
	if len(s.GetData()) > 0 {
		return nil
	}
	l, path, err := rc.receivedSnapFile(s.GetMetadata())
	if err != nil {
		if path != "" {
			if rerr := os.Remove(path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
				rc.lg.Warn("remove a bad snapshot file from the leader", zap.String("path", path), zap.Error(rerr))
			}
		}
		rc.lg.Warn("refused a snapshot from the leader; it will send again", zap.Uint64("from", m.GetFrom()), zap.Uint64("index", s.GetMetadata().GetIndex()), zap.Error(err))
		return err
	}
	rc.received.Store(l)
	return nil
}

// receivedSnapFile reads and checks the saved file of the snapshot md; path
// is the file's, set if the file may exist.
func (rc *raftNode) receivedSnapFile(md *raftpb.SnapshotMetadata) (l *snapFileLayout, path string, err error) {
	path, err = rc.snapshotter.DBFilePath(md.GetIndex())
	if err != nil {
		return nil, "", fmt.Errorf("the snapshot's file from the leader: %w", err)
	}
	l, err = readSnapFile(path)
	if err != nil {
		return nil, path, fmt.Errorf("the snapshot file from the leader: %w", err)
	}
	if err := sameSnapshot(l.md, md); err != nil {
		return nil, path, fmt.Errorf("the snapshot file from the leader is not the one its message names: %w", err)
	}
	return l, path, nil
}

// sameSnapshot says whether a and b name one snapshot: index, term and
// membership (compared by meaning: an unset field and its zero value are
// the same).
func sameSnapshot(a, b *raftpb.SnapshotMetadata) error {
	if a.GetIndex() != b.GetIndex() || a.GetTerm() != b.GetTerm() {
		return fmt.Errorf("index %d, term %d against index %d, term %d", a.GetIndex(), a.GetTerm(), b.GetIndex(), b.GetTerm())
	}
	return raftpb.EnsureConfState(a.GetConfState()).Equivalent(raftpb.EnsureConfState(b.GetConfState()))
}

// persistReceivedSnapshot makes the snapshot raft took from the leader
// durable, the file and then its WAL record, and returns where its state
// is (nil: in s's data). Caller holds snapMu.
func (rc *raftNode) persistReceivedSnapshot(s *raftpb.Snapshot) (*snapFileLayout, error) {
	md := s.GetMetadata()
	if len(s.GetData()) > 0 {
		return nil, rc.persistSnapshot(md, bytesBody(s.GetData()))
	}
	l := rc.received.Swap(nil)
	if l == nil || sameSnapshot(l.md, md) != nil {
		var err error
		if l, _, err = rc.receivedSnapFile(md); err != nil {
			return nil, err
		}
	}
	path := rc.snapName(md.GetTerm(), md.GetIndex())
	if err := os.Rename(l.path, path); err != nil {
		return nil, fmt.Errorf("move the snapshot file from the leader into place: %w", err)
	}
	l.path = path
	return l, rc.recordSnapshot(md)
}

// receivedLeftover says whether name in the snapshot dir is a file that
// rafthttp saved or was saving (<index>.snap.db, or a temp file "tmp…"),
// and its index (0 for a temp file).
func receivedLeftover(name string) (index uint64, ok bool) {
	if rest, ok := strings.CutPrefix(name, "tmp"); ok {
		_, err := strconv.ParseUint(rest, 10, 64)
		return 0, err == nil
	}
	hex, ok := strings.CutSuffix(name, ".snap.db")
	if !ok || len(hex) != 16 {
		return 0, false
	}
	index, err := strconv.ParseUint(hex, 16, 64)
	return index, err == nil
}

// removeReceivedLeftovers removes the files received from a leader up to
// index (all of them, temp files too, with all set: before the transport
// starts, nothing is being received).
func removeReceivedLeftovers(lg *zap.Logger, dir string, index uint64, all bool) {
	names, err := os.ReadDir(dir)
	if err != nil {
		lg.Warn("list the snapshot dir", zap.String("dir", dir), zap.Error(err))
		return
	}
	for _, e := range names {
		i, ok := receivedLeftover(e.Name())
		if !ok || (!all && (i == 0 || i > index)) {
			continue
		}
		path := filepath.Join(dir, e.Name())
		if err := os.Remove(path); err != nil {
			lg.Warn("remove a snapshot file received from a leader but not installed", zap.String("path", path), zap.Error(err))
		} else {
			lg.Info("removed a snapshot file received from a leader but not installed", zap.String("path", path))
		}
	}
}
