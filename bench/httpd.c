#include "http.h"
int main(void) { return 0; }
