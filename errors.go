package main

import (
	"errors"
	"net/http"
)

// reqError is an error a request can end with, with everything the HTTP
// layer needs to answer it: the status, a stable code for machine-readable
// bodies, and what the caller may conclude about its request. Every such
// error is declared in the table below; wrapping one (fmt.Errorf("...: %w"))
// keeps its status.
type reqError struct {
	code    string
	status  int
	outcome outcome
	msg     string
}

func (e *reqError) Error() string { return e.msg }

// outcome says what a failed request did to the cluster.
type outcome uint8

const (
	// outcomeInvalid: refused as asked; nothing happened, and sending the
	// same request again fails the same way.
	outcomeInvalid outcome = iota
	// outcomeRefused: nothing happened; the same request may succeed later.
	outcomeRefused
	// outcomeUnknown: a write may or may not take effect. Retry only what
	// is safe to apply twice, or read to find out.
	outcomeUnknown
)

var (
	errTimeout = &reqError{"timeout", http.StatusServiceUnavailable, outcomeUnknown,
		"request timed out before the cluster answered; the write may or may not have been applied, retry"}
	errNoLeader = &reqError{"no_leader", http.StatusServiceUnavailable, outcomeRefused,
		"no leader: the cluster has no quorum or an election is in progress; retry"}
	errLeaderChanged = &reqError{"leader_changed", http.StatusServiceUnavailable, outcomeUnknown,
		"the raft leader changed while the request was in flight; the write may or may not have been applied, retry"}
	errStopping = &reqError{"stopping", http.StatusServiceUnavailable, outcomeUnknown,
		"server is shutting down; retry on another node"}
	errMemberExists = &reqError{"member_exists", http.StatusBadRequest, outcomeInvalid,
		"member id is already in the cluster"}
	errMemberGone = &reqError{"member_removed", http.StatusBadRequest, outcomeInvalid,
		"member id was removed earlier and cannot be reused; pick a new id"}
	errNoMember = &reqError{"no_such_member", http.StatusNotFound, outcomeInvalid,
		"no such member"}
	errLastMember = &reqError{"last_member", http.StatusConflict, outcomeInvalid,
		"cannot remove the only member of the cluster"}
	errRejectedChange = &reqError{"invalid_change", http.StatusBadRequest, outcomeInvalid,
		"membership change rejected"}
	errNotLearner = &reqError{"not_learner", http.StatusConflict, outcomeInvalid,
		"member is a voter already"}
)

// errInternal stands for any error not in the table: a bug or a disk
// problem, logged where it is answered.
var errInternal = &reqError{"internal", http.StatusInternalServerError, outcomeUnknown, "internal error"}

// classify finds the table entry behind err, or errInternal.
func classify(err error) *reqError {
	var re *reqError
	if errors.As(err, &re) {
		return re
	}
	return errInternal
}
