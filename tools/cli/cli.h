/*
 * cli.h — the subcommands of `dualwrite`. Each one parses its own options
 * from argv (argv[0] is the subcommand name), prints --help, and returns the
 * process exit code: 0 success, 1 runtime failure, 2 usage or configuration
 * error. Errors go to stderr as one line that says what and where.
 */
#ifndef DW_CLI_H
#define DW_CLI_H

#include "config.h"

int cmd_replay(int argc, char **argv);
int cmd_queue(int argc, char **argv);
int cmd_status(int argc, char **argv);
int cmd_backfill(int argc, char **argv);
int cmd_verify(int argc, char **argv);
int cmd_reload(int argc, char **argv);
int cmd_guard(int argc, char **argv);
int cmd_cutover(int argc, char **argv);

/* Load a configuration for a command; on failure print every error line to
 * stderr and return NULL (the caller exits 2). */
struct dw_config *cli_load_config(const char *path);
/* After option parsing: refuse leftover arguments (argv[first..argc)) and a
 * missing -c, then load the configuration. Prints the reason and returns NULL
 * (the caller exits 2). cmd names the subcommand in messages. */
struct dw_config *cli_args_config(const char *cmd, int argc, char **argv, int first,
				  const char *cfgpath);
/* GET /status of the running daemon (cfg's admin.listen): the parsed
 * object, or NULL after printing why to stderr ("CMD: ..."). */
struct json_t;
struct json_t *cli_admin_status(const struct dw_config *cfg, const char *cmd);
/* The same, quiet: NULL when the daemon cannot be asked. */
struct json_t *cli_admin_status_quiet(const struct dw_config *cfg);

/* Whether stderr is a terminal (progress lines are drawn only then). */
int cli_is_tty(void);

#endif
