/*
 * common.c — what every `dualwrite` subcommand shares: loading the
 * configuration with every error printed, and knowing whether stderr is a
 * terminal (progress lines are only drawn there).
 */
#include <stdio.h>
#include <unistd.h>

#include "cli.h"

struct dw_config *cli_load_config(const char *path)
{
	struct dw_errlist errs = {0};
	/* never listens: the daemon's own certificate and key are not read */
	struct dw_config *cfg = config_load_flags(path, CONFIG_NO_LISTEN_TLS, &errs);

	for (size_t i = 0; i < errs.n; i++)
		fprintf(stderr, "%s\n", errs.msgs[i]);
	if (!cfg && errs.n == 0)
		fprintf(stderr, "%s: cannot load configuration\n", path);
	dw_errlist_free(&errs);
	return cfg;
}

int cli_is_tty(void)
{
	return isatty(STDERR_FILENO);
}

struct dw_config *cli_args_config(const char *cmd, int argc, char **argv, int first,
				  const char *cfgpath)
{
	if (first < argc) {
		fprintf(stderr, "dualwrite %s: unexpected argument '%s'\n", cmd, argv[first]);
		return NULL;
	}
	if (!cfgpath) {
		fprintf(stderr, "dualwrite %s: -c FILE is required\n", cmd);
		return NULL;
	}
	return cli_load_config(cfgpath);
}
