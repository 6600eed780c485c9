/*
 * status.c — `dualwrite status`: ask the running daemon's admin endpoint
 * (GET /status) and print its answer, as JSON or as a short summary. The
 * summary walks whatever the daemon returns (top-level values, one line per
 * group, one line per route) so it never lags behind new fields.
 */
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "httpc.h"

static void status_usage(FILE *f)
{
	fprintf(f,
		"usage: dualwrite status -c FILE [--json]\n"
		"\n"
		"Ask the running dualwrited (admin.listen) for its status.\n"
		"\n"
		"  -c, --config FILE  the dualwrited configuration\n"
		"      --json         print the daemon's JSON as is (pretty)\n"
		"  -h, --help         this text\n");
}

static void print_scalar(json_t *v)
{
	if (json_is_string(v))
		printf("%s", json_string_value(v));
	else if (json_is_integer(v))
		printf("%" JSON_INTEGER_FORMAT, json_integer_value(v));
	else if (json_is_real(v))
		printf("%.3g", json_real_value(v));
	else if (json_is_true(v))
		printf("true");
	else if (json_is_false(v))
		printf("false");
	else if (json_is_null(v))
		printf("-");
	else {
		char *s = json_dumps(v, JSON_COMPACT);
		printf("%s", s ? s : "?");
		free(s);
	}
}

/* "k=v k=v ..." for the members of an object, nested ones compact. */
static void print_members(json_t *o)
{
	const char *k;
	json_t *v;
	bool first = true;

	json_object_foreach(o, k, v) {
		printf("%s%s=", first ? "" : " ", k);
		print_scalar(v);
		first = false;
	}
}

static void print_human(json_t *root)
{
	const char *k;
	json_t *v;

	json_object_foreach(root, k, v) {
		if (json_is_object(v)) {
			printf("%-12s ", k);
			print_members(v);
			printf("\n");
		} else if (json_is_array(v)) {
			size_t i;
			json_t *e;
			printf("%s (%zu)\n", k, json_array_size(v));
			json_array_foreach(v, i, e) {
				printf("  ");
				if (json_is_object(e)) {
					json_t *name = json_object_get(e, "name");
					if (json_is_string(name))
						printf("%-20s ", json_string_value(name));
					const char *ek;
					json_t *ev;
					bool first = true;
					json_object_foreach(e, ek, ev) {
						if (!strcmp(ek, "name"))
							continue;
						printf("%s%s=", first ? "" : " ", ek);
						print_scalar(ev);
						first = false;
					}
				} else {
					print_scalar(e);
				}
				printf("\n");
			}
		} else {
			printf("%-12s ", k);
			print_scalar(v);
			printf("\n");
		}
	}
}

int cmd_status(int argc, char **argv)
{
	static const struct option opts[] = {
		{"config", required_argument, NULL, 'c'},
		{"json", no_argument, NULL, 'j'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char *cfgpath = NULL;
	bool as_json = false;
	struct dw_config *cfg = NULL;
	struct httpc *http = NULL;
	struct httpc_response resp = {0};
	struct dw_err err = {{0}};
	json_t *root = NULL;
	json_error_t jerr;
	char host[256];
	int port, c, rc = 1;

	optind = 1;
	while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
		switch (c) {
		case 'c':
			cfgpath = optarg;
			break;
		case 'j':
			as_json = true;
			break;
		case 'h':
			status_usage(stdout);
			return 0;
		default:
			fprintf(stderr, "Run 'dualwrite status --help' for usage.\n");
			return 2;
		}
	}
	cfg = cli_args_config("status", argc, argv, optind, cfgpath);
	if (!cfg)
		return 2;
	if (!cfg->admin_listen) {
		fprintf(stderr, "status: %s: no admin.listen configured, nothing to ask\n", cfgpath);
		rc = 2;
		goto out;
	}
	if (config_split_hostport(cfg->admin_listen, host, sizeof(host), &port, &err) < 0) {
		fprintf(stderr, "status: %s: admin.listen: %s\n", cfgpath, err.msg);
		rc = 2;
		goto out;
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
		fprintf(stderr, "status: cannot reach dualwrited admin at %s: %s\n",
			cfg->admin_listen, m);
		goto out;
	}
	if (resp.status != 200) {
		fprintf(stderr, "status: dualwrited admin at %s answered HTTP %d\n",
			cfg->admin_listen, resp.status);
		goto out;
	}
	root = json_loadb(resp.body, resp.body_len, 0, &jerr);
	if (!json_is_object(root)) {
		fprintf(stderr, "status: dualwrited admin at %s: /status is not a JSON object: %s\n",
			cfg->admin_listen, root ? "wrong type" : jerr.text);
		goto out;
	}
	if (as_json) {
		char *s = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
		printf("%s\n", s ? s : "{}");
		free(s);
	} else {
		print_human(root);
	}
	rc = 0;
out:
	json_decref(root);
	httpc_response_clear(&resp);
	httpc_free(http);
	config_unref(cfg);
	return rc;
}
