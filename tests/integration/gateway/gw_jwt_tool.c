/*
 * gw_jwt_tool - tokens for the gateway's integration tests, made from the
 * key files deploy/certs.sh writes (KEYDIR/<kid>.pem), independently of
 * the gateway's own signing code.
 *
 *   gw_jwt_tool corpus KEYDIR KID1 KID2 ISS AUD LEEWAY_S
 *       every token of the attack corpus, one per line:
 *       name TAB expected-verify-result TAB token
 *   gw_jwt_tool mint KEYDIR KID SUB ROLES ISS AUD TTL_S
 *       one valid ES256 token; ROLES is comma-separated
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../unit/gateway/jwt_corpus.h"

static int load_key(corpus_key_t *k, const char *dir, const char *kid) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s.pem", dir, kid);
  FILE *f = fopen(path, "r");
  if (f == NULL) {
    perror(path);
    return -1;
  }
  char pem[4096];
  size_t n = fread(pem, 1, sizeof pem - 1, f);
  fclose(f);
  pem[n] = '\0';
  if (corpus_key_from_pem(k, kid, pem) < 0) {
    fprintf(stderr, "%s: not an EC P-256 private key\n", path);
    return -1;
  }
  return 0;
}

static int corpus(char **argv) {
  static corpus_key_t k1, k2;
  static corpus_item_t items[CORPUS_MAX];
  if (load_key(&k1, argv[2], argv[3]) < 0 || load_key(&k2, argv[2], argv[4]) < 0) return 1;
  gw_jwt_policy_t p = {.iss = argv[5], .aud = argv[6], .leeway_s = (uint32_t)atoi(argv[7])};
  size_t n = corpus_build(items, &p, (int64_t)time(NULL), &k1, &k2);
  for (size_t i = 0; i < n; i++) printf("%s\t%d\t%s\n", items[i].name, items[i].expect, items[i].token);
  return 0;
}

static int mint(char **argv) {
  static corpus_key_t k;
  if (load_key(&k, argv[2], argv[3]) < 0) return 1;
  char roles[256] = "[";
  const char *r = argv[5];
  for (int i = 0; *r != '\0' && i < 8; i++) {
    size_t len = strcspn(r, ",");
    snprintf(roles + strlen(roles), sizeof roles - strlen(roles), "%s\"%.*s\"", i ? "," : "",
             (int)len, r);
    r += len + (r[len] == ',');
  }
  strcat(roles, "]");
  int64_t now = (int64_t)time(NULL);
  char header[128], claims[768], token[CORPUS_TOKEN_BYTES];
  snprintf(header, sizeof header, "{\"alg\":\"ES256\",\"typ\":\"JWT\",\"kid\":\"%s\"}", k.kid);
  snprintf(claims, sizeof claims,
           "{\"sub\":\"%s\",\"roles\":%s,\"iss\":\"%s\",\"aud\":\"%s\",\"iat\":%lld,\"nbf\":%lld,"
           "\"exp\":%lld,\"jti\":\"mint-%lld\"}",
           argv[4], roles, argv[6], argv[7], (long long)now, (long long)now,
           (long long)(now + atoi(argv[8])), (long long)now);
  corpus_es256(token, header, claims, &k);
  printf("%s\n", token);
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 8 && strcmp(argv[1], "corpus") == 0) return corpus(argv);
  if (argc == 9 && strcmp(argv[1], "mint") == 0) return mint(argv);
  fprintf(stderr,
          "usage: gw_jwt_tool corpus KEYDIR KID1 KID2 ISS AUD LEEWAY_S\n"
          "       gw_jwt_tool mint KEYDIR KID SUB ROLES ISS AUD TTL_S\n");
  return 2;
}
