/*
 * pgdsn — PostgreSQL connection strings (DSNs) as people may see them: in
 * error messages and logs, never with the password (SPEC §6).
 *
 * libpq decides what is secret: PQconninfoParse's options carry a dispchar,
 * "*" for a value that must not be shown (password today; whatever libpq
 * adds later too). Both forms are read: "host=db user=u password=s" and
 * "postgresql://u:s@db/app". Nothing here connects or logs.
 */
#ifndef DW_PGDSN_H
#define DW_PGDSN_H

/* The display form of dsn, malloc'd (the caller frees): the settings it
 * makes, as key=value (quoted where needed), each secret one as key=***.
 * NULL or "" gives "PG* environment"; a DSN libpq cannot parse is not shown
 * at all ("(unparsable DSN, not shown)"), since its secret cannot be found. */
char *pgdsn_display(const char *dsn);

/* A malloc'd copy of msg (e.g. libpq's error text, which may quote pieces of
 * the DSN) with every occurrence of a secret value of dsn replaced by "***".
 * Values shorter than 3 bytes are left alone (masking them would garble the
 * message, and libpq quotes none of them whole). */
char *pgdsn_scrub(const char *msg, const char *dsn);

#endif
