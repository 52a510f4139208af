//go:build !linux

package etcdclient

import "time"

// setUserTimeout: TCP_USER_TIMEOUT is Linux's; elsewhere gRPC's keep-alive
// alone closes a connection whose peer stopped answering.
func setUserTimeout(uintptr, time.Duration) error { return nil }
