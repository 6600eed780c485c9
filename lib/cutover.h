/*
 * cutover — the gates of a write cut-over (SPEC §7.5), as pure functions.
 *
 * cutover_gate decides whether a reload from running to neu may go ahead:
 * a reload that turns a route to authority "new" (or brings one in that
 * way, or points an authority-"new" route at another new system) is refused
 * while the queue holds a record (queued or dead) for that route's new
 * system, or a guard of that upstream is tripped. Flipping back to "legacy"
 * is never refused. What the queue holds and what the guards say come from
 * the caller through struct cutover_probe, so this file reads no queue and
 * no guard state of its own: the daemon passes its spool and guards, a test
 * passes a table.
 *
 * cutover_guards_latch_tripped reads the guards' latch file (guards.json in
 * the queue directory, written by the guards module) for a process that has
 * no guards module of its own to ask: the CLI's `cutover check`, and the
 * daemon until its reload gate is wired to the guards module in memory.
 */
#ifndef DW_CUTOVER_H
#define DW_CUTOVER_H

#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "dw.h"

struct cutover_probe {
	/* Records waiting for upstream: fills queued and dead; -1 with err
	 * when the queue cannot say (the gate then refuses: unknown is not
	 * empty). Required. */
	int (*waiting)(void *arg, const char *upstream, uint64_t *queued, uint64_t *dead,
		       struct dw_err *err);
	/* Whether a guard of upstream is tripped; why (may be NULL) gets the
	 * reason. NULL: no guard is consulted. */
	bool (*tripped)(void *arg, const char *upstream, char *why, size_t whylen);
	void *arg;
};

/* Whether route r of neu turns to authority "new" relative to running (its
 * namesake there, if any). */
bool cutover_flips(const struct dw_config *running, const struct dw_config *neu, size_t r);

/*
 * 0 when neu may replace running. -1 when a flip is refused: err says which
 * route, which upstream and why (the first refusal; every flip is checked in
 * order). Takes no lock and keeps nothing.
 */
int cutover_gate(const struct dw_config *running, const struct dw_config *neu,
		 const struct cutover_probe *p, struct dw_err *err) DW_MUSTCHECK;

/* Read GUARD_FILE_NAME ("guards.json") in dir: 1 when upstream is listed
 * with state "tripped" (why gets its reason), 0 when not (or no file), -1
 * when the file cannot be read or parsed (why says so: the caller counts
 * that as tripped, as the guards module does). */
int cutover_guards_latch_tripped(const char *dir, const char *upstream, char *why,
				 size_t whylen);

#endif
