// A throwaway PostgreSQL for a C++ test binary, made by tests/store/pg_cluster.sh
// (initdb in a temp dir, as an unprivileged user when run as root, on
// 127.0.0.1 with a free port). Tests need a real server: there is no mock.
//
//   static std::unique_ptr<PgTestCluster> cluster;  // SetUpTestSuite:
//   auto c = PgTestCluster::Create();  ASSERT_TRUE(c.ok()) << c.status();
//   auto url = (*c)->NewDatabase();    // an empty database of its own
//   (*c)->Stop(); ... (*c)->Start();   // the database goes away and returns
#pragma once

#include <libpq-fe.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

#ifndef PREFLIGHT_PG_CLUSTER
#error "PREFLIGHT_PG_CLUSTER (the path of tests/store/pg_cluster.sh) must be defined"
#endif

namespace preflight::store {

class PgTestCluster {
 public:
  // FAILED_PRECONDITION with the script's output when the cluster cannot be
  // made (PostgreSQL missing: tools/setup.sh installs it).
  static absl::StatusOr<std::unique_ptr<PgTestCluster>> Create() {
    auto out = Script("create");
    if (!out.ok()) return out.status();
    return std::unique_ptr<PgTestCluster>(new PgTestCluster(*out));
  }
  ~PgTestCluster() { Script(absl::StrCat("destroy ", dir_)).IgnoreError(); }

  const std::string& dir() const { return dir_; }
  const std::string& port() const { return port_; }
  // The URL of database `db` (the script creates `preflight`).
  std::string Url(const std::string& db = "preflight") const {
    return absl::StrCat("postgresql://preflight@127.0.0.1:", port_, "/", db);
  }
  // A new, empty database: its URL.
  absl::StatusOr<std::string> NewDatabase() {
    const std::string name = absl::StrCat("t", ++databases_);
    if (absl::Status s = Sql(Url("postgres"), absl::StrCat("CREATE DATABASE ", name)); !s.ok()) {
      return s;
    }
    return Url(name);
  }
  // Stops the server (pg_ctl stop -m fast), keeping its data; Start() brings
  // it back on the same port.
  absl::Status Stop() { return Script(absl::StrCat("stop ", dir_)).status(); }
  absl::Status Start() { return Script(absl::StrCat("start ", dir_)).status(); }

  // Runs one statement on `url`.
  static absl::Status Sql(const std::string& url, const std::string& sql) {
    PGconn* c = PQconnectdb(url.c_str());
    if (PQstatus(c) != CONNECTION_OK) {
      const std::string why = PQerrorMessage(c);
      PQfinish(c);
      return absl::UnavailableError(why);
    }
    PGresult* r = PQexec(c, sql.c_str());
    const ExecStatusType st = PQresultStatus(r);
    const std::string why = PQresultErrorMessage(r);
    PQclear(r);
    PQfinish(c);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) return absl::InternalError(why);
    return absl::OkStatus();
  }

 private:
  explicit PgTestCluster(std::string dir) : dir_(std::move(dir)) {
    FILE* f = std::fopen((dir_ + "/port").c_str(), "r");
    char buf[32] = {};
    if (f != nullptr) {
      if (std::fgets(buf, sizeof(buf), f) == nullptr) buf[0] = '\0';
      std::fclose(f);
    }
    port_ = std::string(absl::StripAsciiWhitespace(buf));
  }

  // Runs pg_cluster.sh with `args`: its stdout, trimmed.
  static absl::StatusOr<std::string> Script(const std::string& args) {
    const std::string cmd = absl::StrCat(PREFLIGHT_PG_CLUSTER, " ", args, " 2>&1");
    FILE* p = popen(cmd.c_str(), "r");
    if (p == nullptr) return absl::InternalError("popen failed");
    std::string out;
    char buf[512];
    while (std::fgets(buf, sizeof(buf), p) != nullptr) out += buf;
    const int rc = pclose(p);
    if (rc != 0) {
      return absl::FailedPreconditionError(absl::StrCat("pg_cluster.sh ", args, ": ", out));
    }
    return std::string(absl::StripAsciiWhitespace(out));
  }

  std::string dir_;
  std::string port_;
  int databases_ = 0;
};

}  // namespace preflight::store
