// The 16550A as the guest's driver sees it.
import test from 'ava';
import { Serial16550, createSerialShared, COM1_BASE } from '../src/devices/serial.js';

function uart() {
  const levels: number[] = [];
  const s = new Serial16550(createSerialShared(), (l) => levels.push(l));
  return { s, levels, r: (off: number) => s.pioRead(COM1_BASE + off, 1), w: (off: number, v: number) => s.pioWrite(COM1_BASE + off, 1, v) };
}

test('transmit: THR bytes reach the output ring, LSR always shows THRE and TEMT', (t) => {
  const { s, r, w } = uart();
  for (const c of Buffer.from('hi\n')) w(0, c);
  t.is(s.tx.drain().toString(), 'hi\n');
  t.is(r(5) & 0x60, 0x60);
  t.is(s.txBytes, 3);
});

test('divisor latch: DLAB switches offsets 0/1 to DLL/DLM', (t) => {
  const { r, w, s } = uart();
  w(3, 0x83);
  w(0, 0x01);
  w(1, 0x00);
  t.is(r(0), 0x01);
  w(3, 0x03);
  w(0, 0x41);
  t.is(s.tx.drain().toString(), 'A', 'with DLAB clear, offset 0 is THR again');
  t.is(r(3), 0x03);
});

test('receive: input sets DR, raises IRQ when RDI is enabled, and reading drains it', (t) => {
  const { s, levels, r, w } = uart();
  w(1, 0x01); // RDI
  t.deepEqual(levels, []);
  s.receive(Buffer.from('ab'));
  t.deepEqual(levels, [1]);
  t.is(r(5) & 1, 1);
  t.is(r(2) & 0x0f, 0x04, 'IIR says received data');
  t.is(r(0), 0x61);
  t.is(r(0), 0x62);
  t.is(r(5) & 1, 0);
  t.is(r(2) & 0x01, 1, 'no interrupt pending');
  t.deepEqual(levels, [1, 0]);
});

test('THRE interrupt: enabling THRI raises it, reading IIR clears it, writing THR re-arms it', (t) => {
  const { levels, r, w } = uart();
  w(1, 0x02);
  t.deepEqual(levels, [1]);
  t.is(r(2) & 0x0f, 0x02);
  t.deepEqual(levels, [1, 0]);
  w(0, 0x41);
  t.deepEqual(levels, [1, 0, 1]);
  w(1, 0x00);
  t.deepEqual(levels, [1, 0, 1, 0]);
});

test('loopback: MCR outputs appear on MSR and THR bytes come back as input (Linux probe)', (t) => {
  const { s, r, w } = uart();
  w(4, 0x1a); // LOOP | OUT2 | RTS
  t.is(r(6) & 0xf0, 0x90);
  w(0, 0x55);
  t.is(s.tx.length, 0, 'loopback does not transmit');
  t.is(r(0), 0x55);
  w(4, 0x0b);
  t.is(r(6) & 0xb0, 0xb0);
});

test('FIFO: FCR enables FIFO bits in IIR and clears the receiver', (t) => {
  const { s, r, w } = uart();
  w(2, 0x01);
  t.is(r(2) & 0xc0, 0xc0);
  s.receive(Buffer.from('xyz'));
  w(2, 0x03);
  t.is(r(5) & 1, 0);
  t.is(r(7), 0);
  w(7, 0x5a);
  t.is(r(7), 0x5a, 'scratch register');
});
