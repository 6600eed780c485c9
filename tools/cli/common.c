/*
 * common.c — what every `dualwrite` subcommand shares: loading the
 * configuration with every error printed, asking the running daemon's
 * admin endpoint for /status, and knowing whether stderr is a terminal
 * (progress lines are only drawn there).
 */
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "httpc.h"

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

static json_t *admin_status(const struct dw_config *cfg, const char *cmd)
{
	struct httpc *http = NULL;
	struct httpc_response resp = {0};
	struct dw_err err = {{0}};
	json_t *root = NULL;
	json_error_t jerr;
	char host[256];
	int port;

	if (!cfg->admin_listen) {
		if (cmd)
			fprintf(stderr, "%s: %s: no admin.listen configured, nothing to ask\n", cmd,
				cfg->path);
		return NULL;
	}
	if (config_split_hostport(cfg->admin_listen, host, sizeof(host), &port, &err) < 0) {
		if (cmd)
			fprintf(stderr, "%s: %s: admin.listen: %s\n", cmd, cfg->path, err.msg);
		return NULL;
	}
	/* A wildcard listener is reached on loopback. */
	if (!strcmp(host, "0.0.0.0") || host[0] == '\0')
		snprintf(host, sizeof(host), "127.0.0.1");
	else if (!strcmp(host, "::"))
		snprintf(host, sizeof(host), "::1");
	signal(SIGPIPE, SIG_IGN);
	http = httpc_new();
	struct httpc_header accept = {"Accept", "application/json"};
	struct httpc_request req = {
		.host = host,
		.port = port,
		.method = "GET",
		.path = "/status",
		.headers = &accept,
		.nheaders = 1,
		.connect_timeout_ms = 2000,
		.timeout_ms = 5000,
	};
	if (httpc_do(http, &req, &resp, &err) < 0) {
		const char *m = err.msg;
		char prefix[300];
		/* "connect H:P: why" -> "why" since we say where ourselves. */
		snprintf(prefix, sizeof(prefix), "connect %s:%d: ", host, port);
		if (!strncmp(m, prefix, strlen(prefix)))
			m += strlen(prefix);
		if (cmd)
			fprintf(stderr, "%s: cannot reach dualwrited admin at %s: %s\n", cmd,
				cfg->admin_listen, m);
		goto out;
	}
	if (resp.status != 200) {
		if (cmd)
			fprintf(stderr, "%s: dualwrited admin at %s answered HTTP %d\n", cmd,
				cfg->admin_listen, resp.status);
		goto out;
	}
	root = json_loadb(resp.body, resp.body_len, 0, &jerr);
	if (!json_is_object(root)) {
		if (cmd)
			fprintf(stderr,
				"%s: dualwrited admin at %s: /status is not a JSON object: %s\n", cmd,
				cfg->admin_listen, root ? "wrong type" : jerr.text);
		json_decref(root);
		root = NULL;
	}
out:
	httpc_response_clear(&resp);
	httpc_free(http);
	return root;
}

json_t *cli_admin_status(const struct dw_config *cfg, const char *cmd)
{
	return admin_status(cfg, cmd);
}

json_t *cli_admin_status_quiet(const struct dw_config *cfg)
{
	return admin_status(cfg, NULL);
}
