// edgebot_ask: press a button, ask the edgebot board a question over the UART, print the answer.
//
// Protocol: docs/serial-protocol.md (line protocol v1). Wiring: a push button from pin 2 to GND.
// The answer is printed on a second serial port if the board has one (Serial1 on a Leonardo,
// Mega, ESP32 ...), so the USB serial line stays free for the protocol; on an Uno replace the
// NullOut sink below with an LCD or a SoftwareSerial.
// Written against the documentation; syntax-checked with g++ and a stub Arduino.h, not built for a board.

#include <Arduino.h>

#define BUTTON_PIN 2
#define LINK Serial            // the UART edgebot-serial listens on
#if defined(HAVE_HWSERIAL1) || defined(ESP32)
#define ANSWER_OUT Serial1     // where the answer is shown
#else
// No second UART (Uno): never print on the link itself -- the host would answer every such line
// with ERR. Replace this sink with your LCD or a SoftwareSerial.
struct NullOut {
  void print(const char *) {}
  void print(char) {}
  void println(const char *) {}
  void println() {}
};
static NullOut ANSWER_OUT;
#endif

static const char QUESTION[] = "What is 2+2?";
static char line[129];         // one protocol line: at most 128 bytes + NUL
static uint8_t lineLen = 0;
static bool lineTooLong = false;
static uint16_t askId = 0;     // id of the question in progress, 0 = none
static uint16_t nextId = 1;
static int32_t lastSeq = -1;   // last chunk printed (duplicates after a resend are acknowledged, not printed)

static uint8_t xorOf(const char *s, size_t n) {
  uint8_t x = 0;
  for (size_t i = 0; i < n; i++) x ^= (uint8_t)s[i];
  return x;
}

// Send "body*HH\n".
static void sendLine(const char *body) {
  char tail[5];
  snprintf(tail, sizeof tail, "*%02X", xorOf(body, strlen(body)));
  LINK.print(body);
  LINK.print(tail);
  LINK.print('\n');
}

static void sendAck(uint16_t id, uint16_t seq) {
  char buf[20];
  snprintf(buf, sizeof buf, "K %u %u", id, seq);
  sendLine(buf);
}

// Print answer text, undoing the protocol's escapes ("\n" = newline, "\\" = backslash).
static void printText(const char *t) {
  for (; *t; t++) {
    if (*t == '\\' && t[1] == 'n') { ANSWER_OUT.println(); t++; }
    else if (*t == '\\' && t[1] == '\\') { ANSWER_OUT.print('\\'); t++; }
    else ANSWER_OUT.print(*t);
  }
}

// One complete line from the host (terminator removed).
static void handleLine(char *s, uint8_t n) {
  if (n > 0 && s[n - 1] == '\r') s[--n] = '\0';
  if (n < 4 || s[n - 3] != '*') return;                 // checksum = the last three bytes
  uint8_t want = (uint8_t)strtoul(s + n - 2, NULL, 16);
  if (xorOf(s, n - 3) != want) return;                  // damaged: the host resends A lines
  s[n - 3] = '\0';

  if (s[0] == 'A' && s[1] == ' ') {                     // A <id> <seq> <text>
    char *p = s + 2;
    uint16_t id = (uint16_t)strtoul(p, &p, 10);
    uint16_t seq = (uint16_t)strtoul(p, &p, 10);
    if (*p == ' ') p++;                                 // exactly one space before the text
    if (id != askId) return;
    if ((int32_t)seq > lastSeq) { printText(p); lastSeq = seq; }
    sendAck(id, seq);                                   // acknowledge at once, duplicates too
  } else if (s[0] == 'E' && s[1] == ' ') {              // E <id> <reason>
    char *p = s + 2;
    uint16_t id = (uint16_t)strtoul(p, &p, 10);
    if (id == askId) {
      ANSWER_OUT.print("  [");
      ANSWER_OUT.print(p + 1);
      ANSWER_OUT.println("]");
      askId = 0;
    }
  } else if (strncmp(s, "ERR ", 4) == 0) {              // ERR <id> <code> <text>
    char *p = s + 4;
    uint16_t id = (uint16_t)strtoul(p, &p, 10);
    ANSWER_OUT.print("edgebot error:");
    ANSWER_OUT.println(p);
    if (id == askId) askId = 0;                         // the question was not taken
  } else if (strncmp(s, "HELLO ", 6) == 0) {
    ANSWER_OUT.println("edgebot ready");
  }
}

static void readLink() {
  while (LINK.available()) {
    char c = (char)LINK.read();
    if (c == '\n') {
      line[lineLen] = '\0';
      if (!lineTooLong) handleLine(line, lineLen);
      lineLen = 0;
      lineTooLong = false;
    } else if (lineLen < sizeof line - 1) {
      line[lineLen++] = c;
    } else {
      lineTooLong = true;                               // drop the rest up to the next '\n'
    }
  }
}

void setup() {
  pinMode(BUTTON_PIN, INPUT_PULLUP);
  LINK.begin(115200);
#if defined(HAVE_HWSERIAL1) || defined(ESP32)
  ANSWER_OUT.begin(115200);
#endif
  LINK.print('\n');                                     // flush any half line on the host side
  sendLine("HELLO 0 edgebot-ask-1 rx=64");
}

void loop() {
  static bool wasPressed = false;
  static unsigned long pressedAt = 0;
  bool pressed = digitalRead(BUTTON_PIN) == LOW;
  if (pressed && !wasPressed && millis() - pressedAt > 50 && askId == 0) {   // debounced press
    char buf[64];
    askId = nextId;
    nextId = nextId == 65535 ? 1 : nextId + 1;
    lastSeq = -1;
    snprintf(buf, sizeof buf, "Q %u %s", askId, QUESTION);
    sendLine(buf);
    ANSWER_OUT.print("> ");
    ANSWER_OUT.println(QUESTION);
    pressedAt = millis();
  }
  wasPressed = pressed;
  readLink();
}
