/*
 * main.c — `dualwrite`, the companion CLI: dispatches to one subcommand from
 * a table, and for an unknown one suggests the closest name.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

#ifndef DW_VERSION
#define DW_VERSION "0.1.0"
#endif

struct command {
	const char *name;
	int (*fn)(int argc, char **argv);
	const char *summary;
};

static const struct command commands[] = {
	{"replay", cmd_replay, "send queued mirror writes to their targets, in key order"},
	{"queue", cmd_queue, "inspect and manage the replay queue (stats, list, show, requeue, purge)"},
	{"status", cmd_status, "ask the running dualwrited for its status"},
	{"reload", cmd_reload, "check a configuration, have the daemon load it, show the weights"},
	{"guard", cmd_guard, "the rollback guards: status, reset UPSTREAM"},
	{"backfill", cmd_backfill, "copy history from the legacy table to the new one (resumable)"},
	{"verify", cmd_verify, "compare the legacy and new tables, optionally repair"},
	{"cutover", cmd_cutover, "check the gates of a write cut-over (authority \"new\")"},
};

static void usage(FILE *f)
{
	fprintf(f, "usage: dualwrite [--version] [--help] COMMAND [ARGS]\n\ncommands:\n");
	for (size_t i = 0; i < DW_ARRAY_LEN(commands); i++)
		fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
	fprintf(f, "\nRun 'dualwrite COMMAND --help' for the options of one command.\n");
}

/* Levenshtein distance, for "did you mean". */
static size_t edit_distance(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	size_t *row = calloc(lb + 1, sizeof(*row)), d;

	if (!row)
		return (size_t)-1;
	for (size_t j = 0; j <= lb; j++)
		row[j] = j;
	for (size_t i = 1; i <= la; i++) {
		size_t diag = row[0];
		row[0] = i;
		for (size_t j = 1; j <= lb; j++) {
			size_t up = row[j];
			size_t best = diag + (a[i - 1] != b[j - 1]);
			if (row[j] + 1 < best)
				best = row[j] + 1;
			if (row[j - 1] + 1 < best)
				best = row[j - 1] + 1;
			row[j] = best;
			diag = up;
		}
	}
	d = row[lb];
	free(row);
	return d;
}

int main(int argc, char **argv)
{
	const char *name;

	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	name = argv[1];
	if (!strcmp(name, "--help") || !strcmp(name, "-h") || !strcmp(name, "help")) {
		usage(stdout);
		return 0;
	}
	if (!strcmp(name, "--version") || !strcmp(name, "-V")) {
		printf("dualwrite %s\n", DW_VERSION);
		return 0;
	}
	for (size_t i = 0; i < DW_ARRAY_LEN(commands); i++)
		if (!strcmp(name, commands[i].name))
			return commands[i].fn(argc - 1, argv + 1);

	const char *best = NULL;
	size_t bestd = (size_t)-1;
	for (size_t i = 0; i < DW_ARRAY_LEN(commands); i++) {
		size_t d = edit_distance(name, commands[i].name);
		if (d < bestd) {
			bestd = d;
			best = commands[i].name;
		}
	}
	if (name[0] == '-')
		fprintf(stderr, "dualwrite: unknown option '%s'\n", name);
	else
		fprintf(stderr, "dualwrite: unknown command '%s'\n", name);
	if (best && bestd <= 3 && name[0] != '-')
		fprintf(stderr, "did you mean '%s'?\n", best);
	fprintf(stderr, "Run 'dualwrite --help' for the list of commands.\n");
	return 2;
}
