// Package chaos tests the built daemon, `bin/hsmemu serve` in a process of
// its own, under the failures and the load a daemon meets in service:
// killed with SIGKILL while clients write, its state directory's
// filesystem full, its swtpm killed under it, tens of thousands of
// sessions and a thousand connections open at once, and hours of mixed
// load. Its clients speak the module's protocol through
// cryptoki/wire/wiretest, as the C module does.
//
// The tests take minutes, not seconds, so `go test ./...` skips them;
// `make test-chaos` runs them (HSMEMU_CHAOS=1), and CI runs that after
// `make test`. Knobs, all environment variables:
//
//	HSMEMU_CHAOS=1            run the tests at all
//	HSMEMU_CHAOS_KILLS=N      SIGKILLs in TestKill9 (default 30; make test-chaos CHAOS_KILLS=200)
//	HSMEMU_SOAK=DURATION      run TestSoak for that long (make soak: 30m)
//	HSMEMU_SOAK_OUT=FILE      and write its readings there
//	HSMEMU_SOAK_ARGS="FLAGS"  with these flags added to the daemon's
//
// What each test shows, and the figures measured with them, are in
// docs/reliability.md.
package chaos
