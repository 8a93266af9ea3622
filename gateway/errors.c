/*
 * errors.c - the gateway's error codes (-3000..-3099) and their messages.
 */
#include "gw.h"

const char *gw_strerror(int err) {
  switch (err) {
  case GW_E_CONFIG: return "bad or missing gateway configuration";
  case GW_E_PEM: return "PEM data could not be read or decoded";
  case GW_E_KEY: return "key missing, unsupported or not matching";
  case GW_E_TLS: return "TLS failure";
  case GW_E_LIMIT: return "limit reached";
  case GW_E_FULL: return "fixed table full";
  case GW_E_TOKEN_MALFORMED: return "token malformed";
  case GW_E_TOKEN_ALG: return "token algorithm refused";
  case GW_E_TOKEN_KID: return "token key id unknown";
  case GW_E_TOKEN_SIGNATURE: return "token signature invalid";
  case GW_E_TOKEN_EXPIRED: return "token expired";
  case GW_E_TOKEN_EARLY: return "token not valid yet";
  case GW_E_TOKEN_CLAIMS: return "token claims invalid";
  case GW_E_TOKEN_MISSING: return "token missing";
  default: return "unknown gateway error";
  }
}

void gw_register_errors(void) {
  rt_strerror_register(GW_E_RANGE_LO, GW_E_RANGE_HI, gw_strerror);
}
