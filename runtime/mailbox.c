#include "rt.h"
