/*
 * guard.c — `dualwrite reload` and `dualwrite guard` (SPEC §7.4).
 *
 * reload: check FILE as `dualwrited -t` does, find the running daemon by
 * its admin endpoint (/status says its pid, its configuration file and its
 * generation), refuse when that daemon runs another file (it reloads its
 * own), send it SIGHUP, and wait for /status to show a new generation (or
 * one more failed reload: refused, with the daemon's reason). Prints each
 * read route's weight before -> after.
 *
 * guard: the latches live in the file beside the queue (lib/guard.h), so
 * `status` reads them there (the daemon need not run), and `reset` removes
 * one under the file's lock; a running daemon notices within a tick, and
 * the command waits for its /status to say ok.
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "guard.h"

#define RELOAD_WAIT_MS 15000
#define RESET_WAIT_MS 5000
#define POLL_MS 50

static void sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static json_int_t int_at(json_t *o, const char *a, const char *b)
{
	json_t *v = json_object_get(o, a);

	if (b)
		v = json_object_get(v, b);
	return json_is_integer(v) ? json_integer_value(v) : -1;
}

/* "30", "12.5", "0.25": a weight as a person writes it. */
static void fmt_weight(json_t *v, char *buf, size_t cap)
{
	double w;

	if (!json_is_number(v)) {
		snprintf(buf, cap, "-");
		return;
	}
	w = json_number_value(v);
	snprintf(buf, cap, "%.2f", w);
	/* trim trailing zeros and a bare point */
	char *dot = strchr(buf, '.');
	if (dot) {
		char *e = buf + strlen(buf) - 1;
		while (e > dot && *e == '0')
			*e-- = '\0';
		if (e == dot)
			*e = '\0';
	}
}

static json_t *route_read(json_t *status, const char *name)
{
	size_t i;
	json_t *r;

	json_array_foreach(json_object_get(status, "routes"), i, r) {
		json_t *n = json_object_get(r, "name");

		if (json_is_string(n) && strcmp(json_string_value(n), name) == 0)
			return json_object_get(r, "read");
	}
	return NULL;
}

static const char *str_at(json_t *o, const char *k, const char *def)
{
	json_t *v = json_object_get(o, k);

	return json_is_string(v) ? json_string_value(v) : def;
}

static void print_weights(json_t *before, json_t *after)
{
	size_t i;
	json_t *r;

	printf("%-24s %-14s %-18s %-10s %s\n", "ROUTE", "UPSTREAM", "WEIGHT", "EFFECTIVE", "GUARD");
	json_array_foreach(json_object_get(after, "routes"), i, r) {
		json_t *rd = json_object_get(r, "read"), *old;
		const char *name = str_at(r, "name", "?");
		char b[16], a[16], e[16], w[40];

		if (!rd)
			continue;
		old = route_read(before, name);
		fmt_weight(old ? json_object_get(old, "weight") : NULL, b, sizeof(b));
		fmt_weight(json_object_get(rd, "weight"), a, sizeof(a));
		fmt_weight(json_object_get(rd, "effective_weight"), e, sizeof(e));
		snprintf(w, sizeof(w), "%s -> %s", old ? b : "new", a);
		printf("%-24s %-14s %-18s %-10s %s\n", name, str_at(rd, "upstream", "?"), w, e,
		       str_at(json_object_get(rd, "guard"), "state", "ok"));
	}
	json_array_foreach(json_object_get(before, "routes"), i, r) {
		const char *name = str_at(r, "name", "?");
		char b[16], w[40];

		if (!json_object_get(r, "read") || route_read(after, name))
			continue;
		fmt_weight(json_object_get(json_object_get(r, "read"), "weight"), b, sizeof(b));
		snprintf(w, sizeof(w), "%s -> gone", b);
		printf("%-24s %-14s %-18s\n", name,
		       str_at(json_object_get(r, "read"), "upstream", "?"), w);
	}
}

/* Whether pid is a dualwrited on this host. */
static bool is_dualwrited(long pid)
{
	char path[64], comm[64] = "";
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%ld/comm", pid);
	if (!(f = fopen(path, "r")))
		return false;
	if (!fgets(comm, sizeof(comm), f))
		comm[0] = '\0';
	fclose(f);
	comm[strcspn(comm, "\n")] = '\0';
	return strncmp(comm, "dualwrited", 10) == 0;
}

/* The daemon's configuration file as an absolute path: a relative one is
 * relative to the daemon's working directory. out: PATH_MAX bytes. */
static bool daemon_path(long pid, const char *path, char *out)
{
	char link[64], cwd[PATH_MAX], joined[2 * PATH_MAX + 2];
	ssize_t n;

	if (path[0] == '/')
		return realpath(path, out) != NULL;
	snprintf(link, sizeof(link), "/proc/%ld/cwd", pid);
	if ((n = readlink(link, cwd, sizeof(cwd) - 1)) < 0)
		return false;
	cwd[n] = '\0';
	snprintf(joined, sizeof(joined), "%s/%s", cwd, path);
	return realpath(joined, out) != NULL;
}

static void reload_usage(FILE *f)
{
	fprintf(f,
		"usage: dualwrite reload -c FILE\n"
		"\n"
		"Check FILE as `dualwrited -t` does, signal the running dualwrited (found by\n"
		"its admin endpoint) to reload it, wait for the new generation and print each\n"
		"read route's weight before -> after. Exit 0 when applied, 1 when refused\n"
		"(invalid, a paused upstream's weight raised, or any failed reload), 2 on usage.\n"
		"\n"
		"  -c, --config FILE  the configuration the daemon runs (edited)\n"
		"  -h, --help         this text\n");
}

int cmd_reload(int argc, char **argv)
{
	static const struct option opts[] = {
		{"config", required_argument, NULL, 'c'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char *cfgpath = NULL;
	struct dw_config *cfg = NULL;
	json_t *before = NULL, *after = NULL;
	char mine[PATH_MAX], theirs[PATH_MAX];
	json_int_t gen0, failed0, pid;
	int c, rc = 1;

	optind = 1;
	while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
		switch (c) {
		case 'c':
			cfgpath = optarg;
			break;
		case 'h':
			reload_usage(stdout);
			return 0;
		default:
			fprintf(stderr, "Run 'dualwrite reload --help' for usage.\n");
			return 2;
		}
	}
	if (optind < argc || !cfgpath) {
		fprintf(stderr, "dualwrite reload: %s\n",
			cfgpath ? "unexpected argument" : "-c FILE is required");
		return 2;
	}
	cfg = cli_load_config(cfgpath);
	if (!cfg) {
		fprintf(stderr, "reload: %s is not valid; nothing was signalled\n", cfgpath);
		return 1;
	}
	if (!(before = cli_admin_status(cfg, "reload")))
		goto out;
	pid = int_at(before, "pid", NULL);
	gen0 = int_at(before, "generation", NULL);
	failed0 = int_at(before, "reloads", "failed");
	if (pid <= 1 || gen0 < 0 || failed0 < 0) {
		fprintf(stderr, "reload: the daemon's /status lacks pid, generation or reloads\n");
		goto out;
	}
	if (!is_dualwrited((long)pid)) {
		fprintf(stderr, "reload: pid %lld (from %s) is not a dualwrited on this host\n",
			(long long)pid, cfg->admin_listen);
		goto out;
	}
	/* It reloads its own file: make sure that is the one checked. */
	if (!realpath(cfgpath, mine) || !daemon_path((long)pid, str_at(before, "config", ""), theirs) ||
	    strcmp(mine, theirs) != 0) {
		fprintf(stderr, "reload: the daemon (pid %lld) runs %s, not %s; it would reload its own\n",
			(long long)pid, str_at(before, "config", "?"), cfgpath);
		goto out;
	}
	if (kill((pid_t)pid, SIGHUP) < 0) {
		fprintf(stderr, "reload: cannot signal pid %lld: %s\n", (long long)pid,
			strerror(errno));
		goto out;
	}
	for (int waited = 0; waited <= RELOAD_WAIT_MS; waited += POLL_MS) {
		json_decref(after);
		after = cli_admin_status_quiet(cfg);
		if (after && int_at(after, "generation", NULL) > gen0) {
			print_weights(before, after);
			printf("reload: applied (generation %lld)\n",
			       (long long)int_at(after, "generation", NULL));
			rc = 0;
			goto out;
		}
		if (after && int_at(after, "reloads", "failed") > failed0) {
			fprintf(stderr, "reload: refused, the running configuration stays: %s\n",
				str_at(json_object_get(after, "reloads"), "last_error",
				       "see the daemon's log"));
			goto out;
		}
		sleep_ms(POLL_MS);
	}
	fprintf(stderr, "reload: no new generation after %d s; see the daemon's log\n",
		RELOAD_WAIT_MS / 1000);
out:
	json_decref(before);
	json_decref(after);
	config_unref(cfg);
	return rc;
}

/* ---------------------------------------------------------------- guard */

static void guard_usage(FILE *f)
{
	fprintf(f,
		"usage: dualwrite guard -c FILE status\n"
		"       dualwrite guard -c FILE reset UPSTREAM\n"
		"\n"
		"The rollback guards' latches, kept in %s beside the queue.\n"
		"  status          per new-system upstream: ok, paused or tripped; reason,\n"
		"                  measured value and since\n"
		"  reset UPSTREAM  clear its trip or pause; a running daemon applies it\n"
		"                  within a second (waited for when its admin endpoint answers)\n"
		"\n"
		"  -c, --config FILE  the dualwrited configuration\n"
		"  -h, --help         this text\n",
		GUARD_FILE_NAME);
}

static void since_text(int64_t ms, char *buf, size_t cap)
{
	time_t s = (time_t)(ms / 1000);
	struct tm tm;

	if (!ms || !gmtime_r(&s, &tm))
		snprintf(buf, cap, "-");
	else
		strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static int guard_status(const struct dw_config *cfg, const struct guard_file *f)
{
	printf("%-16s %-8s %-28s %-22s %s\n", "UPSTREAM", "STATE", "REASON", "SINCE", "DETAIL");
	for (size_t i = 0; i < cfg->nupstreams; i++) {
		const struct guard_latch *l = guard_file_find(f, cfg->upstreams[i].name);
		char since[40];

		if ((int)i == cfg->default_upstream)
			continue;
		if (!l) {
			printf("%-16s %-8s\n", cfg->upstreams[i].name, "ok");
			continue;
		}
		since_text(l->since_ms, since, sizeof(since));
		printf("%-16s %-8s %-28s %-22s %s\n", cfg->upstreams[i].name,
		       guard_state_name(l->state), l->reason, since, l->detail);
	}
	for (size_t i = 0; i < f->n; i++)
		if (config_upstream_index(cfg, f->v[i].name) < 0)
			printf("%-16s %-8s %-28s (not in %s)\n", f->v[i].name,
			       guard_state_name(f->v[i].latch.state), f->v[i].latch.reason,
			       cfg->path);
	return 0;
}

static const char *live_state(json_t *st, const char *upstream)
{
	json_t *u = json_object_get(json_object_get(st, "upstreams"), upstream);

	return str_at(json_object_get(u, "guard"), "state", NULL);
}

static int guard_reset(const struct dw_config *cfg, const char *name)
{
	const char *dir = cfg->queue.path;
	struct guard_file f = {0};
	struct guard_latch ok = {.state = GUARD_OK};
	struct dw_err err = {""};
	json_t *st;
	int lk, rc;

	if (config_upstream_index(cfg, name) < 0) {
		fprintf(stderr, "guard: no upstream \"%s\" in %s\n", name, cfg->path);
		return 2;
	}
	if ((lk = guard_file_lock(dir, &err)) < 0) {
		fprintf(stderr, "guard: %s\n", err.msg);
		return 1;
	}
	rc = guard_file_read(dir, &f, &err);
	if (rc < 0) {
		guard_file_unlock(lk);
		fprintf(stderr, "guard: %s; fix it, or remove it to reset every upstream\n",
			err.msg);
		return 1;
	}
	if (!guard_file_find(&f, name)) {
		guard_file_unlock(lk);
		guard_file_free(&f);
		printf("guard: upstream \"%s\" is ok; nothing to reset\n", name);
		return 0;
	}
	guard_file_put(&f, name, &ok);
	rc = guard_file_write(dir, &f, &err);
	guard_file_unlock(lk);
	guard_file_free(&f);
	if (rc < 0) {
		fprintf(stderr, "guard: %s\n", err.msg);
		return 1;
	}
	if (!(st = cli_admin_status_quiet(cfg))) {
		printf("guard: upstream \"%s\" reset in %s/%s; no daemon answers at %s: it "
		       "applies at its start\n",
		       name, dir, GUARD_FILE_NAME, cfg->admin_listen ? cfg->admin_listen : "-");
		return 0;
	}
	for (int waited = 0; waited <= RESET_WAIT_MS; waited += POLL_MS) {
		const char *s = live_state(st, name);

		if (s && strcmp(s, "ok") == 0) {
			json_decref(st);
			printf("guard: upstream \"%s\" reset; the daemon serves its configured read "
			       "weights again\n",
			       name);
			return 0;
		}
		json_decref(st);
		sleep_ms(POLL_MS);
		if (!(st = cli_admin_status_quiet(cfg)))
			break;
	}
	json_decref(st);
	fprintf(stderr, "guard: upstream \"%s\" reset in the file, but the daemon did not show it "
			"ok within %d s (tripped again?); see its log\n",
		name, RESET_WAIT_MS / 1000);
	return 1;
}

int cmd_guard(int argc, char **argv)
{
	static const struct option opts[] = {
		{"config", required_argument, NULL, 'c'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char *cfgpath = NULL, *verb;
	struct dw_config *cfg;
	struct guard_file f = {0};
	struct dw_err err = {""};
	int c, rc;

	optind = 1;
	while ((c = getopt_long(argc, argv, "+c:h", opts, NULL)) != -1) {
		switch (c) {
		case 'c':
			cfgpath = optarg;
			break;
		case 'h':
			guard_usage(stdout);
			return 0;
		default:
			fprintf(stderr, "Run 'dualwrite guard --help' for usage.\n");
			return 2;
		}
	}
	if (optind >= argc) {
		fprintf(stderr, "dualwrite guard: status or reset UPSTREAM expected\n");
		return 2;
	}
	verb = argv[optind++];
	if (strcmp(verb, "status") == 0) {
		if (!(cfg = cli_args_config("guard status", argc, argv, optind, cfgpath)))
			return 2;
		if (guard_file_read(cfg->queue.path, &f, &err) < 0) {
			fprintf(stderr, "guard: %s\n", err.msg);
			config_unref(cfg);
			return 1;
		}
		rc = guard_status(cfg, &f);
		guard_file_free(&f);
		config_unref(cfg);
		return rc;
	}
	if (strcmp(verb, "reset") == 0) {
		const char *name;

		if (optind >= argc) {
			fprintf(stderr, "dualwrite guard reset: UPSTREAM expected\n");
			return 2;
		}
		name = argv[optind++];
		if (!(cfg = cli_args_config("guard reset", argc, argv, optind, cfgpath)))
			return 2;
		rc = guard_reset(cfg, name);
		config_unref(cfg);
		return rc;
	}
	fprintf(stderr, "dualwrite guard: unknown action '%s' (status, reset UPSTREAM)\n", verb);
	return 2;
}
