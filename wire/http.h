#ifndef WIRE_HTTP_H
#define WIRE_HTTP_H
#endif
