package main

import (
	"errors"
	"fmt"
	"net/http"
	"testing"
)

func TestClassifyReadsTheTable(t *testing.T) {
	for _, tc := range []struct {
		err     error
		status  int
		outcome outcome
	}{
		{errTimeout, http.StatusServiceUnavailable, outcomeUnknown},
		{errNoLeader, http.StatusServiceUnavailable, outcomeRefused},
		{fmt.Errorf("%w: %w", errRejectedChange, errors.New("bad URL")), http.StatusBadRequest, outcomeInvalid},
		{fmt.Errorf("propose: %w", errors.New("disk on fire")), http.StatusInternalServerError, outcomeUnknown},
		{errLastMember, http.StatusConflict, outcomeInvalid},
		{errNoMember, http.StatusNotFound, outcomeInvalid},
	} {
		re := classify(tc.err)
		if re.status != tc.status || re.outcome != tc.outcome {
			t.Errorf("%v: status %d outcome %d, want %d %d", tc.err, re.status, re.outcome, tc.status, tc.outcome)
		}
	}
}
